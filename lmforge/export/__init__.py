"""The exported model directory: ONNX graphs (portable, fast, onnxruntime-genai), variants, verification."""

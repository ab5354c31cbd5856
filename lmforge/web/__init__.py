"""`lmforge web DIR`: an exported model directory run in the browser with onnxruntime-web (wasm). The page
(index.html, app.js, decode.js, tokenizer.js) tokenizes, decodes and streams in the browser; serve.py serves it,
onnxruntime-web's files (node_modules/, from `npm ci` here) and the model directory on 127.0.0.1; browser.py drives
a headless Chromium over the DevTools protocol (the tests and benchmarks/web_decode.py)."""

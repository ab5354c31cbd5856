"""`lmforge serve-model`: a registered version or model directory served to apps over HTTP, OpenAI-compatible and
streaming, on LitServe, with concurrent requests decoded as one batch (docs/serving.md)."""

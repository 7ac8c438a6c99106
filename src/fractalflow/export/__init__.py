"""Export to ONNX for onnxruntime (Python) and onnxruntime-web (the browser)."""

from fractalflow.export.onnx import ExportSettings, export_onnx

__all__ = ["ExportSettings", "export_onnx"]

"""Names in studylib that only a framework or library reads; tests/test_lint.py's dead-code check scans this file.

Each line names the attribute so vulture counts it as used, with the reader that uses it.
"""
from types import SimpleNamespace

_ = SimpleNamespace()
_.description               # studylib/bench.py: argparse prints it in `studylib bench --help`
_.forward                   # studylib/nets.py SmallVGG: nn.Module.__call__ calls it
_.get_next                  # studylib/serve/export.py: ONNX Runtime's quantize_static reads calibration batches through it
_.rewind                    # the same calibration-reader interface
_.intra_op_num_threads      # studylib/serve/export.py: set on onnxruntime.SessionOptions, read by ONNX Runtime
_.inter_op_num_threads      # the same
_.graph_optimization_level  # the same
_.MAX_IMAGE_PIXELS          # studylib/serve/server.py: PIL's decompression-bomb limit, read by PIL
_._repr_pretty_             # studylib/views/cost.py Text: IPython's plain-text display hook
_._repr_markdown_           # studylib/views/cost.py Text: Jupyter's Markdown display hook
_.cycle                     # the argument IPython passes to _repr_pretty_
_.__class__                 # studylib/models.py freeze_backbone: a frozen backbone's BatchNorm layer takes a subclass whose train() holds eval mode

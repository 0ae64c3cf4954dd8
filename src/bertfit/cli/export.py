"""`bertfit export`: export a trained model to ONNX, optionally int8 (the library: bertfit/export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bertfit.cli.common import module_doc

HELP = "export a trained model to ONNX, optionally int8 (extra: bertfit[export])"
DESCRIPTION = module_doc("bertfit.predict.export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any BERT classifier directory)")
    parser.add_argument("--output", required=True, help="directory to write model.onnx, config and tokenizer into")
    parser.add_argument("--int8", action="store_true",
                        help="quantize the weights to int8 (ONNX Runtime dynamic quantization); the label agreement "
                             "with fp32 is measured and printed")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("--check-file", help="labelled .csv/.tsv/.jsonl file: also report both models' accuracy on it")


def run(args: argparse.Namespace) -> int:
    from bertfit.predict.export import MODEL_FILE, export_onnx

    report = export_onnx(args.run, args.output, int8=args.int8, opset=args.opset, check_file=args.check_file)
    kind = "int8" if args.int8 else "fp32"
    print(f"exported {kind} ONNX model to {Path(args.output) / MODEL_FILE} ({report['size_mb']:.1f} MB)")
    print(f"check on {report['texts']} texts vs PyTorch fp32: max |logit diff| {report['max_abs_logit_diff']:.2e}, "
          f"{report['agreement']} {100 * report['label_agreement']:.2f}%")
    if "metric" in report:
        m = report["metric"]
        print(f"{m}: PyTorch fp32 {report[m + '_pytorch_fp32']:.4f}, export {report[m + '_export']:.4f} "
              f"({100 * report[m + '_delta']:+.2f} points)")
    print(f"predict with: bertfit predict {args.output} \"some text\"")
    return 0

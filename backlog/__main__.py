"""Score image collections offline with the decisions the service would make (`score`), and check that
two outputs agree (`compare`). `--help` on each command lists every option with its default."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from .config import ENGINES, ScoreConfig


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; descriptions keep their paragraphs."""


D = {f.name: f.default for f in dataclasses.fields(ScoreConfig) if f.default is not dataclasses.MISSING}

SCORE_HELP = """Score an image collection with one domain's CURRENT bundle: Parquet out, one row per file.

Every image is scored against --domain, or with --domain auto routed first by the store's domain
router, as /classify routes an image sent without a domain (local engine; OUT/_routes.parquet
holds each image's domain and confidence, OUT/<domain>/ its domain's rows; an image routed with
low confidence that is not flagged needs review, as the service answers it).

Every file of an input folder gets a row (hidden files excepted). A file the service would
refuse (TIFF, PDF, text, empty, truncated, too large) gets an error row with the code /classify
answers for it: `error` reads "code: message" and `error_code` holds the code (unsupported_format,
undecodable_image, empty_image, image_too_large, too_many_pixels, degenerate_image; unreadable_input
for a file that cannot be read). Accepted: JPEG, PNG, WebP, GIF (first frame), BMP.

The output is a folder (OUT.parquet/) of shard-NNNNN.parquet files plus _backlog.json; a rerun
with the same arguments skips committed shards. Multi-node: start Ray on every node (`ray start
--head` on one, `ray start --address HEAD:6379` on the others), then run with --engine ray
--ray-address auto (or RAY_ADDRESS=HEAD:6379); see docs/backlog.md."""

COMPARE_HELP = """Check that two backlog outputs make the same decisions.

Rows are matched by id: the decisions (domain, error code, top_label, out_of_scope, flagged,
needs_review) must be equal and every score and probability within --atol (relative to the
value where it exceeds 1, as scope_score does). Prints one JSON
report; exits 0 when identical, 1 if not."""


def _score_parser(sub) -> None:
    p = sub.add_parser("score", help="score images into Parquet", description=SCORE_HELP,
                       formatter_class=HelpFormatter)
    p.add_argument("--input", type=Path, required=True, default=argparse.SUPPRESS,
                   help="image folder (recursive), Parquet file or folder (image bytes or paths), or a list file "
                        "(one path per line)")
    p.add_argument("--domain", required=True, default=argparse.SUPPRESS,
                   help="the bundle domain every image is scored against, or auto: each image routed by the store's "
                        "domain router first (local engine)")
    p.add_argument("--out", type=Path, required=True, default=argparse.SUPPRESS, help="output folder, e.g. OUT.parquet")
    p.add_argument("--store", type=Path, default=D["store"], help="bundle store root")
    p.add_argument("--engine", choices=ENGINES, default=D["engine"], help="local process or Ray Data")
    p.add_argument("--model", default=D["model"], help="open_clip architecture or JSON config path")
    p.add_argument("--pretrained", default=D["pretrained"], help="embedded | open_clip tag | checkpoint path")
    p.add_argument("--tokenizer", default=D["tokenizer"], help="local Hugging Face tokenizer directory")
    p.add_argument("--device", default=D["device"], help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default=D["precision"], help="auto (fp16 on CUDA) | fp32 | fp16 | bf16")
    p.add_argument("--batch-size", type=int, default=D["batch_size"], help="images per model call")
    p.add_argument("--decode-workers", type=int, default=D["decode_workers"],
                   help="decode threads (per process / per Ray actor)")
    p.add_argument("--shard-size", type=int, default=D["shard_size"], help="images per output shard (unit of resume)")
    p.add_argument("--threads", type=int, default=D["threads"], help="torch threads; 0 = auto: local on CPU, the cores the decode workers leave (>= 1); "
                        "else torch's / Ray's default")
    p.add_argument("--max-image-bytes", type=int, default=D["max_image_bytes"],
                   help="larger files become error rows, image_too_large (the service's MAX_IMAGE_BYTES)")
    p.add_argument("--max-image-pixels", type=int, default=D["max_image_pixels"],
                   help="larger images become error rows, too_many_pixels (the service's MAX_IMAGE_PIXELS)")
    p.add_argument("--min-image-side", type=int, default=D["min_image_side"],
                   help="images with a smaller side become error rows, degenerate_image (the service's "
                        "MIN_IMAGE_SIDE)")
    p.add_argument("--review-out-of-scope", action="store_true", help="send out-of-scope images to review")
    p.add_argument("--image-column", default=D["image_column"],
                   help="Parquet: column of image bytes or paths; None: the first of image, bytes, ..., path")
    p.add_argument("--id-column", default=D["id_column"], help="Parquet: id column; None: id if present, else the path or file#row")
    p.add_argument("--ray-address", default=D["ray_address"],
                   help="Ray cluster address (auto, HOST:6379, ray://...); None: RAY_ADDRESS, else a local Ray")
    p.add_argument("--ray-concurrency", type=int, default=D["ray_concurrency"],
                   help="scoring actors; 0 = one per GPU, else cluster CPUs / --ray-cpus-per-actor")
    p.add_argument("--ray-cpus-per-actor", type=float, default=D["ray_cpus_per_actor"], help="CPUs per scoring actor")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="info", help="debug | info | warning")


def _config(a: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(input=a.input, out=a.out, domain=a.domain, store=a.store, engine=a.engine, model=a.model,
                       pretrained=a.pretrained, tokenizer=a.tokenizer, device=a.device, precision=a.precision,
                       batch_size=a.batch_size, decode_workers=a.decode_workers, shard_size=a.shard_size,
                       threads=a.threads, max_image_bytes=a.max_image_bytes, max_image_pixels=a.max_image_pixels,
                       min_image_side=a.min_image_side,
                       review_out_of_scope=a.review_out_of_scope, image_column=a.image_column,
                       id_column=a.id_column, ray_address=a.ray_address, ray_concurrency=a.ray_concurrency,
                       ray_cpus_per_actor=a.ray_cpus_per_actor, progress=not a.no_progress)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backlog", description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _score_parser(sub)
    c = sub.add_parser("compare", help="check two outputs make the same decisions",
                       formatter_class=HelpFormatter, description=COMPARE_HELP)
    c.add_argument("a", type=Path, metavar="A",
                   help="first output: a score --out folder (OUT.parquet/) or one Parquet file")
    c.add_argument("b", type=Path, metavar="B", help="second output, same kind, of the same input listing")
    c.add_argument("--atol", type=float, default=1e-5, help="largest allowed score / probability difference")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "compare":
        from .compare import compare_tables, read_output

        try:
            report = compare_tables(read_output(args.a), read_output(args.b), args.atol)
        except (ValueError, OSError) as e:  # not an output folder: say which, no stack trace
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(report, default=str))
        return 0 if report["identical"] else 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import score

    try:
        result = score(_config(args))
    except ValueError as e:  # a bad input, store, domain or output: say what, no stack trace
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

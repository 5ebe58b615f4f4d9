"""`python -m backlog score ...` and `python -m backlog compare A B`; --help on each gives every default."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from .config import ENGINES, ScoreConfig

D = {f.name: f.default for f in dataclasses.fields(ScoreConfig) if f.default is not dataclasses.MISSING}

SCORE_HELP = """Score an image collection with one domain's CURRENT bundle: Parquet out, one row per image.

--domain is required: auto-routing images to a domain is not available yet (the domain
router is issue 13). The output is a folder (OUT.parquet/) of shard-NNNNN.parquet files plus
_backlog.json; a rerun with the same arguments skips committed shards. Multi-node: start Ray
on every node (`ray start --head` on one, `ray start --address HEAD:6379` on the others), then
run with --engine ray --ray-address auto (or RAY_ADDRESS=HEAD:6379); see docs/backlog.md."""


def _score_parser(sub) -> None:
    p = sub.add_parser("score", help="score images into Parquet", description=SCORE_HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, required=True, default=argparse.SUPPRESS,
                   help="image folder (recursive), Parquet file or folder (image bytes or paths), or a list file "
                        "(one path per line)")
    p.add_argument("--domain", required=True, default=argparse.SUPPRESS, help="the bundle domain to score against (required: no auto-routing yet)")
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
    p.add_argument("--max-image-pixels", type=int, default=D["max_image_pixels"],
                   help="larger images become error rows")
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
                       threads=a.threads, max_image_pixels=a.max_image_pixels,
                       review_out_of_scope=a.review_out_of_scope, image_column=a.image_column,
                       id_column=a.id_column, ray_address=a.ray_address, ray_concurrency=a.ray_concurrency,
                       ray_cpus_per_actor=a.ray_cpus_per_actor, progress=not a.no_progress)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backlog", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _score_parser(sub)
    c = sub.add_parser("compare", help="check two outputs make the same decisions",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Rows matched by id: decisions must be equal, scores within --atol. Exit 1 if not.")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--atol", type=float, default=1e-5, help="largest allowed score / probability difference")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "compare":
        from .compare import compare_tables, read_output

        report = compare_tables(read_output(args.a), read_output(args.b), args.atol)
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

"""`edgegen convert` and `edgegen info`."""

from __future__ import annotations

from pathlib import Path

import click

from edgegen.cli._app import main


@main.command()
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--runtime", type=click.Choice(["mlx", "onnx"]), default="onnx", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--quant", type=click.Choice(["none", "q8", "q4", "fp16", "w8a16", "w4a16"]), default=None,
              help="Weights: none (default), q8 or q4; for --target npu fp16 (default), w8a16 / w4a16 (QDQ: "
                   "int8 / int4 weights, uint16 activations) or none (fp32).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="Quantization group size (default 32 for ONNX, 64 for MLX).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
@click.option("--force", is_flag=True, help="Replace OUT if it is a previous edgegen output (or an empty folder).")
@click.option("--target", type=click.Choice(["cpu", "npu"]), default="cpu", show_default=True,
              help="onnx: npu writes static-shape graphs of standard ops for NPU execution providers.")
@click.option("--context", type=int, default=None, help="--target npu: the KV cache's capacity (default 1024).")
@click.option("--chunk", type=int, default=None, help="--target npu: inputs per chunk graph run (default 16).")
@click.option("--calibration", default=None, metavar="FILE",
              help="--quant w8a16/w4a16: UTF-8 text to calibrate activations on (default: the bundled text).")
def convert(src: str, out: Path, runtime: str, dtype: str, quant: str | None, group_size: str | None,
            revision: str | None, force: bool, target: str, context: int | None, chunk: int | None,
            calibration: str | None) -> None:
    """Convert SRC (a Hugging Face folder, hub repo id or bundled model name) into OUT."""
    from edgegen.models import convert_source

    path = convert_source(src, out, runtime=runtime, dtype=dtype, quant=quant, revision=revision, force=force,
                          group_size=int(group_size) if group_size else None, target=target, context=context,
                          chunk=chunk, calibration=calibration)
    click.echo(f"wrote {path}", err=True)


@main.command()
@click.argument("model", required=False)
@click.option("--provider", default=None, help="NPU bundles: count the nodes of each graph this provider takes.")
def info(model: str | None, provider: str | None) -> None:
    """Describe MODEL: a converted folder, or a model that other commands take (a bundled name, a
    Hugging Face checkpoint), converted into the cache first as they would (default: tiny-chat)."""
    from edgegen.core.manifest import Manifest
    from edgegen.models import is_converted, is_foreign, locate, read_manifest

    folder = Path(model).expanduser() if model else None
    if folder is not None and is_foreign(folder):
        manifest = read_manifest(folder)
    elif folder is not None and (is_converted(model) or folder.is_dir() and not (folder / "config.json").is_file()):
        manifest = Manifest.read(folder)  # converted, or a folder edgegen can neither read nor convert
    else:
        manifest = Manifest.read(locate(model))
    rows = manifest.describe()
    if provider is not None:
        rows += _placement_rows(folder if folder is not None and is_converted(model) else locate(model),
                                manifest, provider)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


def _placement_rows(folder: Path, manifest, provider: str) -> list[tuple[str, str]]:
    from edgegen.core.errors import ConfigError
    from edgegen.runtimes.onnx.session import placement

    if manifest.target != "npu":
        raise ConfigError("--provider counts the nodes of an NPU bundle's graphs; convert with --target npu")
    rows = []
    for role in ("npu_chunk", "npu_step"):
        taken, total = placement(folder / manifest.files[role], provider)
        rows.append((f"{manifest.files[role]} on {provider}", f"{taken} of {total} nodes"
                                                             + ("" if taken == total else f" ({total - taken} on the CPU)")))
    return rows

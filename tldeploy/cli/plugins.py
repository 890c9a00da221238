"""`tldeploy plugins`: the cpp_plugins libraries."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, cli
from tldeploy.engines.plugins import SWITCHES

# ---------------------------------------------------------------- plugins


@cli.group("plugins", context_settings=CONTEXT)
def plugins_group() -> None:
    """The cpp_plugins libraries: fused channel-attention kernels and the TensorRT plugin.

    \b
    Example:
      tldeploy plugins build --tensorrt-root /opt/TensorRT
    """


@plugins_group.command("build", context_settings=CONTEXT)
@click.option("--build-dir", type=click.Path(path_type=Path), help="CMake build folder [default: $TLDEPLOY_CACHE/plugins, where --plugins auto looks].")
@click.option("--cuda", type=click.Choice(SWITCHES), default="auto", show_default=True, help="Build the CUDA kernels (auto: where nvcc is found).")
@click.option("--tensorrt", type=click.Choice(SWITCHES), default="auto", show_default=True, help="Build the TensorRT plugin (auto: where TensorRT's headers are found).")
@click.option("--tensorrt-root", type=click.Path(path_type=Path), help="TensorRT's folder, holding include/NvInferRuntime.h [default: $TENSORRT_ROOT].")
@click.option("--cuda-archs", default="87;90", show_default=True, help="GPU architectures to compile for (87 Jetson Orin, 90 Hopper).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1), help="Parallel compile jobs.")
def plugins_build_cmd(build_dir: Path | None, cuda: str, tensorrt: str, tensorrt_root: Path | None, cuda_archs: str, jobs: int) -> None:
    """Build cpp_plugins with CMake into a known place and print the libraries' paths.

    \b
    Examples:
      tldeploy plugins build
      tldeploy plugins build --tensorrt-root /usr/src/tensorrt --cuda-archs "87"
      tldeploy build digits_trt.onnx --precision fp16 --plugins auto
    """
    from tldeploy.engines.plugins import PluginBuildConfig, build_plugins

    result = build_plugins(PluginBuildConfig(build_dir=build_dir, cuda=cuda, tensorrt=tensorrt, tensorrt_root=tensorrt_root,
                                             cuda_archs=cuda_archs, jobs=jobs))
    for line in result.summary:
        click.echo(line)
    click.echo(f"C ABI library:   {result.ca_library}")
    click.echo(f"TensorRT plugin: {result.plugin_library or 'not built (see above)'}")

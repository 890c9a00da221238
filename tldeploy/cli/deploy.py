"""`tldeploy bundle` and `tldeploy verify`: the last mile to the device."""

from __future__ import annotations

from pathlib import Path

import click

from tldeploy.cli._common import CONTEXT, _setup_logging, cli
from tldeploy.deploy import BUILD_PRECISIONS


@cli.command("bundle", context_settings=CONTEXT)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), required=True, help="The checkpoint the export came from (RUN_DIR/model.pt).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Validation images (class folders): the golden inputs are drawn from them.")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), required=True, help="The bundle folder to write.")
@click.option("--golden", default=32, show_default=True, type=click.IntRange(1), help="Golden inputs, spread over the classes.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1), help="Triton max_batch_size for dynamic-batch models.")
@click.option("--classifier-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="DeepStream classifier-threshold (on probs).")
@click.option("--plugins", type=click.Path(path_type=Path), help="The cpp_plugins TensorRT library built for the device, for ARTIFACTS with ChannelAttention plugin nodes (their sources are bundled either way).")
@click.option("--tar", is_flag=True, help="Also write BUNDLE.tar, one file to copy.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), help="Sign every file of the bundle with this EC private key (PEM; 'tldeploy keygen'), OpenSSF model-signing format: bundle.sig.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--quiet", is_flag=True, help="Warnings only.")
def bundle_cmd(artifacts: tuple[Path, ...], reference: Path, data: Path, output: Path, golden: int, max_batch: int,
               classifier_threshold: float, plugins: Path | None, tar: bool, sign_key: Path | None, force: bool, quiet: bool) -> None:
    """Write a self-contained folder to take to the device: the FP32 ONNX (and its raw-input
    variant where DeepStream cannot express the preprocessing), the built ARTIFACTS with their
    records, golden inputs and the reference's outputs (.npz and Polygraphy JSON), labels,
    DeepStream and Triton configs, and a manifest with every file's SHA-256.

    \b
    Example:
      tldeploy bundle digits.onnx digits.fp32.ort.onnx digits.int8.ort.onnx \\
        --reference runs/digits/model.pt --data data/digits/val -o digits-bundle --tar --sign release.pem
    """
    _setup_logging(quiet)
    from tldeploy.deploy.bundle import BundleConfig, bundle

    result = bundle(BundleConfig(artifacts=artifacts, reference=reference, data=data, output=output, golden=golden,
                                 max_batch=max_batch, classifier_threshold=classifier_threshold, plugins=plugins, tar=tar,
                                 force=force, sign=sign_key))
    for e in result.manifest.artifacts:
        m = e.measured_here or {}
        here = (f"top-1 agreement {m['top1_agreement']:.2%} here" if "top1_agreement" in m else m.get("not_run", ""))
        click.echo(f"  {e.file:<40} {e.precision:<5} {e.input:<10} {here}")
    click.echo(f"wrote {result.path} ({len(result.manifest.files)} files)" + (f" and {result.tar}" if result.tar else "")
               + (f", signed by {result.signed_by}" if result.signed_by else ""))


@cli.command("verify", context_settings=CONTEXT)
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--build", is_flag=True, help="Build TensorRT engines here from the bundle's ONNX first, and check them too.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(BUILD_PRECISIONS), help="With --build: engines to build (repeatable) [default: fp16]; INT8 engines are built where the calibration data is, and bundled.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]), help="Where ONNX artifacts run.")
@click.option("-o", "--out", "output", type=click.Path(path_type=Path), help="Folder for verify.json and verify.md [default: BUNDLE/verify].")
@click.option("--public-key", type=click.Path(path_type=Path), help="Check the bundle's signature with this public key first (PEM, the signer's KEY.pub); a missing or foreign signature fails and nothing else runs.")
@click.option("--trust-plugins", is_flag=True, help="Load the bundle's plugin library (native code) though its signature was not verified; recorded in the report.")
@click.option("--quiet", is_flag=True, help="Warnings only.")
def verify_cmd(bundle_dir: Path, build: bool, precisions: tuple[str, ...], device: str, output: Path | None, public_key: Path | None,
               trust_plugins: bool, quiet: bool) -> None:
    """On the device: check every file of BUNDLE against its manifest, every record against its
    artifact, every engine's TensorRT and GPU against this machine, then run the golden inputs
    through every artifact and compare with the reference under the manifest's tolerances.

    \b
    Examples:
      tldeploy verify digits-bundle --public-key release.pub
      tldeploy verify digits-bundle --public-key release.pub --build --precision fp16
    """
    _setup_logging(quiet)
    from tldeploy.deploy.verify import VerifyConfig, verify

    result = verify(VerifyConfig(bundle=bundle_dir, build=build, precisions=precisions, device=device, output=output,
                                 public_key=public_key, trust_plugins=trust_plugins))
    if result.signature is not None:
        click.echo(f"  {'pass' if result.signature.verified else 'FAIL' if result.signature.checked else 'note'}  {result.signature.describe()}")
    for c in result.checks:
        click.echo(f"  {'skip' if c.skipped else 'pass' if c.passed else 'FAIL'}  {c.artifact}: {c.detail}")
    click.echo(f"wrote {result.report} and verify.md beside it")
    if not result.passed:
        for line in result.failures():
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(1)


@cli.command("keygen", context_settings=CONTEXT)
@click.argument("stem", metavar="KEY", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen_cmd(stem: Path, force: bool) -> None:
    """Make a P-256 key pair for signing bundles: KEY.pem (private, mode 0600; keep it where bundles
    are made) and KEY.pub (give it to the devices, by another channel than the bundle).

    \b
    Example:
      tldeploy keygen release && tldeploy bundle ... --sign release.pem
      tldeploy verify BUNDLE --public-key release.pub          # on the device
    """
    from tldeploy.deploy.signing import keygen

    pair = keygen(stem, force=force)
    click.echo(f"wrote {pair.private} (private: keep it secret) and {pair.public} (public), key id {pair.key_id}")

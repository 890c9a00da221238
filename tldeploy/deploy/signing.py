"""Bundle signatures with OpenSSF `model-signing`: who made a bundle, not only that it arrived intact.

The signature (`bundle.sig`, a Sigstore bundle holding an in-toto statement of every file's
SHA-256) covers every file of the bundle, the manifest included, so a changed artifact cannot be
hidden by rewriting its hash in the manifest. What `verify` writes inside a bundle (`verify/`,
`device/`) is outside the signature. Keys are elliptic-curve (P-256 by `keygen`; P-384 and P-521
are accepted), PEM-encoded; the private key stays with whoever builds bundles, the public key
travels to the devices by another channel than the bundle.

Why the library and not our own signature over the manifest: `model-signing` is the format the
field converges on (its signatures verify with its own CLI, with no tldeploy on the device), and it
already does key, certificate and Sigstore signing; we add only which paths a bundle excludes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldeploy.deploy.manifest import DEVICE_DIR, SIGNATURE, VERIFY_DIR
from tldeploy.errors import ConfigError, MissingDependencyError

UNSIGNED_BY_DESIGN = (SIGNATURE, VERIFY_DIR, DEVICE_DIR)  # relative to the bundle root


def _lib() -> Any:
    try:
        import model_signing
    except ImportError:
        raise MissingDependencyError("model-signing", purpose="signing and checking bundle signatures") from None
    return model_signing


def _hashing(ms: Any) -> Any:
    # Every file is covered, .git* included (a bundle has no business holding them); no symlinks.
    return ms.hashing.Config().set_ignored_paths(paths=list(UNSIGNED_BY_DESIGN), ignore_git_paths=False).set_allow_symlinks(False)


def _key_bytes(path: Path, flag: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{flag} {path} does not exist; make a key pair with 'tldeploy keygen KEY'")
    return path.read_bytes()


def load_private_key(path: Path, flag: str = "--sign") -> Any:
    """The EC private key at `path`, refused in one line if it is not one model-signing can use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _key_bytes(Path(path), flag)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{flag} {path} is encrypted; give an unencrypted PEM private key (keep it readable only by you)") from None
    except ValueError:
        raise ConfigError(f"{flag} {path} is not a PEM private key; make a key pair with 'tldeploy keygen KEY'") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise ConfigError(f"{flag} {path} is not an elliptic-curve P-256/P-384/P-521 key; make one with 'tldeploy keygen KEY'")
    return key


def load_public_key(path: Path, flag: str = "--public-key") -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _key_bytes(Path(path), flag)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        hint = " (that is the private key: give the .pub beside it)" if b"PRIVATE KEY" in data else ""
        raise ConfigError(f"{flag} {path} is not a PEM public key{hint}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{flag} {path} is not an elliptic-curve public key; bundles are signed with EC keys ('tldeploy keygen')")
    return key


def key_id(public_key: Any) -> str:
    """SHA-256 of the DER public key: the signer's name in records and reports."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def keygen(stem: Path, *, force: bool = False) -> KeyPair:
    """STEM.pem (the private key, mode 0600) and STEM.pub: a P-256 pair for `bundle --sign`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tldeploy._io import atomic_path, check_writable

    stem = Path(stem)
    private, public = stem.with_name(stem.name + ".pem"), stem.with_name(stem.name + ".pub")
    for p in (private, public):
        check_writable(p, force=force)
    key = ec.generate_private_key(ec.SECP256R1())
    with atomic_path(private) as tmp:
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(private, 0o600)  # atomic_path gives the usual permissions; a private key keeps its own
    try:
        with atomic_path(public) as tmp:
            tmp.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    except BaseException:
        private.unlink()  # half a pair is no pair
        raise
    return KeyPair(private, public, key_id(key.public_key()))


def sign_bundle(root: Path, private_key: Path) -> str:
    """Write ROOT/bundle.sig over every file of ROOT; returns the signer's key id."""
    ms = _lib()
    key = load_private_key(private_key)
    cfg = ms.signing.Config().use_elliptic_key_signer(private_key=Path(private_key)).set_hashing_config(_hashing(ms))
    cfg.sign(Path(root), Path(root) / SIGNATURE)
    return key_id(key.public_key())


class SignatureError(Exception):
    """The bundle's signature does not verify; the message says why in one line."""


def _differences(text: str) -> str:
    """model-signing's mismatch list (the repr of a list of strings) as file names: changed, added, missing."""
    import re

    text = text.replace("\\'", "'")
    changed = re.findall(r"Hash mismatch for '(.+?)': Expected", text)
    added = re.findall(r"Extra files found in model '.*?': (.*?)[\"']\s*[,\]]", text)
    missing = re.findall(r"Missing files in model '.*?': (.*?)[\"']\s*[,\]]", text)
    parts = ([f"{', '.join(changed)} changed"] if changed else []) + [f"{a} added" for a in added] + [f"{m} missing" for m in missing]
    return "; ".join(parts) or text[:300]


def verify_signature(root: Path, public_key: Path) -> str:
    """Check ROOT/bundle.sig with `public_key` against every file of ROOT; returns the key id.
    Raises SignatureError (missing, unreadable, made with another key, or a file that differs from
    what was signed, named) before anything of the bundle is used."""
    ms = _lib()
    key = load_public_key(public_key)
    sig = Path(root) / SIGNATURE
    if not sig.is_file():
        raise SignatureError(f"{SIGNATURE} is missing: the bundle is not signed (sign it with 'tldeploy bundle ... --sign KEY.pem')")
    cfg = ms.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).set_hashing_config(_hashing(ms))
    try:
        cfg.verify(Path(root), sig)
    except ValueError as e:
        text = " ".join(str(e).split())
        if text.startswith("Signature mismatch"):
            raise SignatureError(f"the bundle differs from what was signed: {_differences(text)}") from None
        raise SignatureError(f"{SIGNATURE} does not verify with {Path(public_key).name} ({text})") from None
    except Exception as e:  # a corrupt signature file: protobuf/JSON/base64 errors of the library's readers
        if isinstance(e, (OSError, MemoryError)):
            raise
        raise SignatureError(f"{SIGNATURE} is not a readable signature ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return key_id(key)

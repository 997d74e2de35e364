"""Image references in Docker's grammar, normalized the way Docker and containerd do.

``busybox`` becomes ``docker.io/library/busybox:latest``; ``quay.io/org/app@sha256:...`` keeps its digest.
The first path component is a registry host when it contains a dot or a colon, is ``localhost``, or has an
upper-case letter; otherwise the image lives on Docker Hub (``docker.io``), where single-component names
belong to the ``library/`` namespace.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from crirt.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?")
_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HEX_ID = re.compile(r"[a-f0-9]{64}")
DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
"""The digest algorithms crirt verifies, with the length of their lower-case hex encoding."""


def valid_digest(digest: str) -> bool:
    """True for ``<algorithm>:<hex>`` with a supported algorithm and the exact lower-case hex length."""
    algorithm, _, hex_part = digest.partition(":")
    length = DIGEST_HEX_LENGTH.get(algorithm)
    return length is not None and len(hex_part) == length and all(c in "0123456789abcdef" for c in hex_part)


@dataclass(frozen=True)
class Reference:
    """A normalized reference: registry domain, repository path, and a tag and/or a digest."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository's full name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def hostname(self) -> str:
        """The domain without its port (and without IPv6 brackets)."""
        if self.domain.startswith("["):
            return self.domain[1 : self.domain.index("]")]
        return self.domain.rsplit(":", 1)[0] if ":" in self.domain else self.domain


def is_loopback_host(hostname: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1: registries Docker reaches over plain HTTP without configuration."""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def looks_like_image_id(text: str) -> bool:
    """A bare 64-hex string or ``sha256:<hex>``: an image id rather than a name."""
    return bool(_HEX_ID.fullmatch(text.removeprefix("sha256:")))


def split_domain(name: str) -> tuple[str, str]:
    """Split a (possibly familiar) name into its registry domain and repository path, Docker's way."""
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost" and first == first.lower()):
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, rest
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize ``text``; without a tag or digest the tag is ``latest`` (unless ``default_tag``
    is false). Raises ``InvalidArgument`` saying what is wrong."""
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}: empty or surrounded by whitespace")
    remainder, at, digest = text.partition("@")
    if at and not valid_digest(digest):
        raise InvalidArgument(f"invalid image reference {text!r}: digest must be sha256:<64 hex>, "
                              f"sha384:<96 hex> or sha512:<128 hex>")
    tag = ""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"invalid image reference {text!r}: bad tag {tag!r}")
    if not at and not tag and _HEX_ID.fullmatch(remainder):
        raise InvalidArgument(f"invalid image reference {text!r}: a 64-hex string is an image id, not a name")
    domain, path = split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidArgument(f"invalid image reference {text!r}: bad registry host {domain!r}")
    if path != path.lower():
        raise InvalidArgument(f"invalid image reference {text!r}: repository name must be lowercase")
    if not _PATH.fullmatch(path):
        raise InvalidArgument(f"invalid image reference {text!r}: bad repository name {path!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"invalid image reference {text!r}: name longer than {MAX_NAME_LENGTH} characters")
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)

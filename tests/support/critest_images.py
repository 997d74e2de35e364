"""The images critest (cri-tools v1.36.0) pulls, built from Debian's busybox and served in "mirror mode".

critest names upstream images (``registry.k8s.io/e2e-test-images/...``, ``gcr.io/k8s-staging-cri-tools/...``,
``public.ecr.aws/docker/library/busybox:...``) and compares image names, tags, ids and users against what it
pulled, so the names must stay the upstream ones. Every image is pushed to one local registry under
``<upstream host>/<upstream repository>`` and ``mirror_config`` maps each upstream host to that prefix.

What each image does mirrors cri-tools' ``images/`` Dockerfiles and what ``pkg/validate`` checks:

- the busybox base is Debian's dynamically linked busybox with the host's shared libraries it needs: its sh,
  unlike busybox-static's (FEATURE_SH_STANDALONE), executes ``/bin/ls`` for ``sh -c ls`` as the busybox image's
  does, so a masked /bin/ls is refused; every applet is a hard link to /bin/busybox (as the busybox image has: a
  symlink would make a masked ``/bin/ls`` mask busybox itself); the busybox image's users and groups, and an
  ``ipcs`` script (Debian's busybox has none) reading /proc/sysvipc/shm;
- the nginx stand-ins are a shell script named ``nginx`` (so ``pidof nginx`` finds it) that re-executes itself
  with "nginx: master process" in its command line, writes /var/run/nginx.pid and runs busybox httpd;
- nonewprivs runs a setuid-root static helper printing "Effective uid: N" (busybox drops setuid privileges);
- the test-image-* images differ by one file named after them; the user images only by their config's User.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.images import LayerTar, Layout, push

E2E = "registry.k8s.io/e2e-test-images"
CRI_TOOLS = "gcr.io/k8s-staging-cri-tools"
ECR_BUSYBOX = "public.ecr.aws/docker/library/busybox"
BUSYBOX_DEB = Path(__file__).resolve().parents[1] / ".cache" / "busybox.deb"
"""Debian's dynamically linked busybox package, downloaded by ``make busybox-deb`` (it conflicts with the
busybox-static the other tests use, so it is never installed)."""
UPSTREAM_HOSTS = ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws")
"""The registries critest names; each is mirrored to ``<local registry>/<host>`` with no fallback, and pulls
from any other registry are refused."""

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = b"""root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
audio:x:29:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""
"""The busybox image's accounts: RunAsUserName "nobody" and the "www-data" image users must resolve."""

IPCS = b"""#!/bin/sh
# ipcs -m for busybox images without the applet: the System V shared memory of this IPC namespace.
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
awk 'NR > 1 { printf "0x%08x %-10s %-10s %-10s %-10s %s\\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
"""

PGREP = b"""#!/bin/sh
# pgrep PATTERN for busybox images without the applet: pids whose process name matches; status 1 if none.
status=1
for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    [ "$pid" = "$$" ] && continue
    read -r name < "$dir/comm" 2>/dev/null || continue
    if echo "$name" | grep -q -- "$1"; then echo "$pid"; status=0; fi
done
exit $status
"""

PAUSE = b"""#!/bin/sh
# pause stand-in: waits for a signal and exits 0 on TERM or INT (even as a pid namespace's init).
trap 'exit 0' TERM INT
sleep 2147483647 &
wait
"""

NGINX = b"""#!/bin/sh
# nginx stand-in: busybox httpd on PORT; this script's name is what `pidof nginx` finds and, re-executed,
# its command line carries "master process" as nginx's master does.
PORT=%d
if [ "$1" != "nginx: master process" ]; then exec "$0" "nginx: master process" "$@"; fi
echo $$ > /var/run/nginx.pid
httpd -f -p "$PORT" -h /usr/share/nginx/html &
child=$!
trap 'kill $child; exit 0' TERM INT QUIT
wait $child
"""
NGINX_PAGE = b"<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n"

NNP_CODE = bytes.fromhex(
    "b86b0000000f054883ec40488d74243fc6060ab90a00000031d2f7f180c23048ffce881685c075f0488d7ef1488d052e000000"
    "488b0848890f488b480748894f07488d5424404829fa4889febf01000000b8010000000f0531ffb83c0000000f05"
    + b"Effective uid: ".hex())
"""x86-64 code of the nonewprivs helper, position independent: geteuid; format "Effective uid: <n>\\n" below the
stack pointer; one write(1, ...); exit(0). Assembled from 30 lines of assembly; no libc."""


def static_elf(code: bytes, base: int = 0x400000) -> bytes:
    """A minimal static x86-64 ELF executable: one read+execute PT_LOAD segment holding ``code``."""
    header_size, phdr_size = 64, 56
    entry = base + header_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, header_size, 0, 0, header_size, phdr_size, 1,
                               0, 0, 0)
    total = header_size + phdr_size + len(code)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    return ehdr + phdr + code


def busybox_base(busybox: Path) -> LayerTar:
    """The busybox image's root: ``busybox``, its shared libraries, applets hard-linked to it, accounts, dirs."""
    layer = LayerTar()
    libraries = shared_libraries(busybox)
    directories = {"bin", "etc", "home", "root", "usr", "usr/bin", "usr/sbin", "var", "var/run", "var/www"}
    directories |= {str(parent) for library in libraries for parent in Path(library).parents if str(parent) != "."}
    for directory in sorted(directories):
        layer.dir(directory, mode=0o700 if directory == "root" else 0o755)
    layer.dir("tmp", mode=0o1777)
    for library in libraries:
        layer.file(library, (Path("/") / library).read_bytes(), mode=0o755)
    layer.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in _applets(busybox):
        layer.hardlink(f"bin/{applet}", "bin/busybox", mode=0o755)
    layer.file("usr/bin/ipcs", IPCS, mode=0o755).file("usr/bin/pgrep", PGREP, mode=0o755)
    layer.file("etc/passwd", PASSWD).file("etc/group", GROUP)
    return layer


def dynamic_busybox(work: Path) -> Path:
    """/bin/busybox of ``BUSYBOX_DEB``, extracted under ``work``."""
    if not BUSYBOX_DEB.is_file():
        raise FileNotFoundError(f"{BUSYBOX_DEB} is missing: `make busybox-deb` downloads it (apt-get download)")
    subprocess.run(["dpkg-deb", "-x", str(BUSYBOX_DEB), str(work)], check=True)
    return work / "bin" / "busybox"


def shared_libraries(binary: Path) -> list[str]:
    """The host's shared libraries ``binary`` loads (its ELF interpreter included), as paths relative to /."""
    lines = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines()
    paths = [line.split("=>")[-1].split()[0] for line in lines if "/" in line]
    return sorted(path.lstrip("/") for path in paths)


def _applets(busybox: Path) -> list[str]:
    names = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    return sorted(name for name in names if name not in ("busybox", "ipcs", "pgrep") and "/" not in name)


def nginx_layer(port: int) -> LayerTar:
    return (LayerTar().file("usr/sbin/nginx", NGINX % port, mode=0o755).dir("usr/share").dir("usr/share/nginx")
            .dir("usr/share/nginx/html").file("usr/share/nginx/html/index.html", NGINX_PAGE))


def httpd_layer() -> LayerTar:
    return (LayerTar().dir("usr/local").dir("usr/local/bin").dir("usr/local/apache2")
            .dir("usr/local/apache2/htdocs")
            .file("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1></body></html>\n")
            .file("usr/local/bin/httpd-foreground",
                  b"#!/bin/sh\necho 'httpd-foreground: busybox httpd on port 80' >&2\n"
                  b"exec httpd -f -p 80 -h /usr/local/apache2/htdocs\n", mode=0o755))


def nonewprivs_layer() -> LayerTar:
    return (LayerTar().dir("usr/local").dir("usr/local/bin")
            .file("usr/local/bin/nnp", static_elf(NNP_CODE), mode=0o4755))


def marker_layer(name: str) -> LayerTar:
    """cri-tools' image-test Dockerfile adds a file named after the image, so each test image is distinct."""
    return LayerTar().file(name, name.encode() + b"\n")


def predefined_group_layer() -> LayerTar:
    """default-user (1000, own group 1000) is a member of group-defined-in-image (50000) in /etc/group."""
    return (LayerTar().file("etc/passwd", PASSWD + b"default-user:x:1000:1000::/home/default-user:/bin/sh\n")
            .file("etc/group", GROUP + b"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
            .dir("home/default-user", uid=1000, gid=1000))


@dataclass
class Spec:
    """One image: the upstream references that name it, its layers on top of the base, and its config."""

    refs: list[str]
    layers: list[LayerTar] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def specs() -> list[Spec]:
    """Every image critest's non-benchmark specs pull (and the benchmark ones, which are cheap)."""
    nginx_config = {"Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"80/tcp": {}},
                    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    images = [
        Spec([f"{E2E}/busybox:1.29-2"]),
        Spec([f"{E2E}/nginx:1.14-2"], [nginx_layer(80)], nginx_config),
        Spec([f"{CRI_TOOLS}/hostnet-nginx-amd64:latest"], [nginx_layer(12003)], nginx_config),
        Spec([f"{E2E}/httpd:2.4.39-4"], [httpd_layer()],
             {"Cmd": ["httpd-foreground"], "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
        Spec([f"{E2E}/nonewprivs:1.3"], [nonewprivs_layer()], {"Entrypoint": ["/usr/local/bin/nnp"], "Cmd": None}),
        Spec([f"{CRI_TOOLS}/test-image-tags:1", f"{CRI_TOOLS}/test-image-tags:2", f"{CRI_TOOLS}/test-image-tags:3"],
             [marker_layer("test-image-tags")]),
        Spec([f"{CRI_TOOLS}/test-image-predefined-group:latest"], [predefined_group_layer()], {"User": "1000"}),
        Spec(["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"], [LayerTar().file("pause", PAUSE, mode=0o755)],
             {"Entrypoint": ["/pause"], "Cmd": None}),
    ]
    for name in ("test-image-1:latest", "test-image-2:latest", "test-image-3:latest", "test-image-latest:latest",
                 "test-image-tag:test", "test-image-tag:all"):
        images.append(Spec([f"{CRI_TOOLS}/{name}"], [marker_layer(name.replace(":", "-"))]))
    for name, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:users"),
                       ("username-group", "www-data:users")):
        images.append(Spec([f"{CRI_TOOLS}/test-image-user-{name}:latest"], config={"User": user}))
    for tag in ("1", "1-glibc", "1-musl", "1-uclibc", "1.35.0-glibc"):
        images.append(Spec([f"{ECR_BUSYBOX}:{tag}"], [marker_layer(f"busybox-{tag}")]))
    return images


def publish(path: Path, registry_host: str) -> dict[str, str]:
    """Build every image of ``specs`` in a layout at ``path`` and push each name to the local registry under
    ``<upstream host>/<repository>``; returns upstream reference -> image id (the config digest)."""
    layout = Layout(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        base = (busybox_base(dynamic_busybox(Path(work))).bytes(), "gzip")
    ids = {}
    for spec in specs():
        config = {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], **spec.config}
        descriptor = layout.image([base, *((layer.bytes(), "gzip") for layer in spec.layers)],
                                  user=config.pop("User", ""), config=config)
        image_id = json.loads(layout.read(descriptor["digest"]))["config"]["digest"]
        for ref in spec.refs:
            name = ref.replace("/", "_").replace(":", "_")
            layout.tag(descriptor, name)
            push(layout, name, f"{registry_host}/{ref}")
            ids[ref] = image_id
    return ids


def mirror_config(registry_host: str) -> str:
    """``[registries."<host>"]`` tables sending every upstream critest names to the local registry only."""
    tables = [f'[registries."{host}"]\nmirrors = ["http://{registry_host}/{host}"]\nfallback_to_origin = false\n'
              for host in UPSTREAM_HOSTS]
    return "".join(tables) + '[registries."*"]\nblocked = true\n'

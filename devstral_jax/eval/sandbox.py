"""How an execution worker is confined by the OS: the command line and environment that start it.

With root and `unshare` (Linux namespaces), each worker gets:
  - its own network namespace with no interface up: no network at all, loopback included;
  - its own PID namespace (the VM is PID 1; when it exits, every process a program started dies with it);
  - its own mount namespace: a fresh, size-limited tmpfs on /tmp holding the scratch directory, read-only
    empty /var/tmp, /dev/shm and /run/lock, and every other mount (/, /work, ...) remounted read-only;
  - an unprivileged user (`nobody`), no capabilities, `no_new_privs`, a clean environment;
  - rlimits: address space (so one huge allocation kills only this VM), processes, file size, no core dumps.
Where that is impossible (not root, no namespaces) the mode decides: "required" (the default) refuses to
run anything and says why; "best_effort" runs the worker as the current user with the rlimits only and
`Sandbox.warnings` says what is missing; "off" always does that (debugging). See README, "What the
sandbox does and does not stop".
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pwd
import shutil
import subprocess
import tempfile

from devstral_jax.errors import ConfigError, SandboxUnavailable

# Runs as root inside the new namespaces, then drops to the unprivileged user and execs the worker ("$@").
_CONFINE = r"""
set -e
mount -t tmpfs -o "size=${SANDBOX_TMPFS_MB}m,mode=0755,nosuid,nodev" tmpfs /tmp
mkdir -m 0700 /tmp/scratch
chown "$SANDBOX_UID:$SANDBOX_GID" /tmp/scratch
for dir in /var/tmp /dev/shm /run/lock; do
  if [ -d "$dir" ]; then mount -t tmpfs -o ro,size=4k,mode=0755 tmpfs "$dir"; fi
done
for point in $(awk '{print $5}' /proc/self/mountinfo); do
  case "$point" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp) ;;
    *) mount -o remount,bind,ro "$point" 2>/dev/null || true ;;
  esac
done
exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp/scratch TMPDIR=/tmp/scratch LANG=C.UTF-8 \
  ELIXIR_ERL_OPTIONS="$SANDBOX_ERL_OPTIONS" ERL_CRASH_DUMP_SECONDS=0 \
  ELIXIR_WORKER_IN_FD="$ELIXIR_WORKER_IN_FD" ELIXIR_WORKER_OUT_FD="$ELIXIR_WORKER_OUT_FD" \
  setpriv --reuid="$SANDBOX_UID" --regid="$SANDBOX_GID" --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all -- "$@"
"""

SCRATCH_IN_SANDBOX = "/tmp/scratch"
MODES = ("required", "best_effort", "off")


@dataclasses.dataclass(frozen=True)
class Limits:
    address_space_mb: int = 3072  # per worker VM; a program that allocates past it crashes only its VM
    heap_mb: int = 512  # per Erlang process (max_heap_size); the process is killed, the VM lives
    processes: int = 32768  # Erlang processes per VM (+P)
    os_processes: int = 512  # OS processes and threads of the unprivileged user (RLIMIT_NPROC)
    file_size_mb: int = 64  # largest file a program may write (RLIMIT_FSIZE)
    scratch_mb: int = 256  # the tmpfs holding the scratch directory
    schedulers: int = 1  # Erlang schedulers (cores) per VM: a pool runs one VM per core


@dataclasses.dataclass(frozen=True)
class Sandbox:
    launcher: tuple[str, ...]  # prepended to the `elixir` command line
    env: dict[str, str]  # environment for the launcher
    scratch: str  # the scratch directory as the worker sees it
    isolated: bool  # namespaces + unprivileged user in force
    warnings: tuple[str, ...]
    host_scratch: str | None = None  # a host directory to delete at the end (unconfined mode only)

    def cleanup(self) -> None:
        if self.host_scratch:
            shutil.rmtree(self.host_scratch, ignore_errors=True)


def erl_options(limits: Limits) -> str:
    """`limits.schedulers` schedulers per VM (one: the pool runs one VM per core) that do not busy-wait when
    idle (the VMs share the cores with each other and the host), and the Erlang process limit. The dirty
    schedulers keep their short busy-wait: file and code-loading work runs there, and waking them from sleep
    made each program ~18% slower in a lone VM."""
    s = limits.schedulers
    return f"+S {s}:{s} +SDcpu 1:1 +SDio 2 +A 1 +sbwt none +P {limits.processes}"


def rlimits(limits: Limits) -> list[str]:
    mb = 1024 * 1024
    return ["prlimit", f"--as={limits.address_space_mb * mb}", f"--nproc={limits.os_processes}",
            f"--fsize={limits.file_size_mb * mb}", "--core=0", "--"]


def make_sandbox(limits: Limits = Limits(), user: str = "nobody", mode: str = "required",
                 readable: tuple[str, ...] = ()) -> Sandbox:
    """The confinement `mode` asks for (see the module docstring); `readable`: files the confined user must be
    able to read (the server script). Raises SandboxUnavailable when "required" cannot be met."""
    if mode not in MODES:
        raise ConfigError(f"sandbox mode must be one of {', '.join(MODES)}; got {mode!r}.")
    problem = _why_not_confinable(user, tuple(os.path.abspath(p) for p in readable)) if mode != "off" else \
        "the sandbox was switched off"
    if problem is not None and mode == "required":
        raise SandboxUnavailable(
            f"Cannot sandbox the Elixir programs: {problem}. Run as root on Linux with `unshare` (util-linux) "
            "and a `nobody` user, or accept running model-written code with time, heap and rlimits only "
            "(sandbox mode \"best_effort\", e.g. --config.eval.sandbox=best_effort).")
    prlimit = rlimits(limits) if shutil.which("prlimit") else []
    if problem is None:
        account = pwd.getpwnam(user)
        env = {"SANDBOX_UID": str(account.pw_uid), "SANDBOX_GID": str(account.pw_gid),
               "SANDBOX_TMPFS_MB": str(limits.scratch_mb), "SANDBOX_ERL_OPTIONS": erl_options(limits)}
        launcher = ("unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--ipc", "--uts",
                    "sh", "-c", _CONFINE, "confine", *prlimit)
        return Sandbox(launcher, env, SCRATCH_IN_SANDBOX, True, ())
    scratch = tempfile.mkdtemp(prefix="elixir-eval-")
    warnings = [f"Elixir programs run UNCONFINED ({problem}): they can reach the network, write wherever "
                f"{pwd.getpwuid(os.getuid()).pw_name} can, and see other processes. Only time, heap and rlimits apply."]
    if not prlimit:
        warnings.append("`prlimit` (util-linux) is missing: no address-space, process or file-size limits.")
    env = {"ELIXIR_ERL_OPTIONS": erl_options(limits), "ERL_CRASH_DUMP_SECONDS": "0", "HOME": scratch,
           "TMPDIR": scratch}
    return Sandbox(tuple(prlimit), env, scratch, False, tuple(warnings), host_scratch=scratch)


@functools.cache
def _why_not_confinable(user: str, readable: tuple[str, ...]) -> str | None:
    """None if namespaces, mounts and the user switch all work here; else what is missing."""
    if os.geteuid() != 0:
        return "not running as root, so no mount/PID/network namespaces or user switch"
    for tool in ("unshare", "setpriv", "awk"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"there is no user {user!r} to run programs as"
    probe = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--ipc", "--uts", "sh", "-c",
             _CONFINE, "confine", "sh", "-c", 'test ! -w / && touch /tmp/scratch/probe && for f; do test -r "$f" || '
             '{ echo "$f is not readable by the sandbox user"; exit 1; }; done', "probe", *readable]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDBOX_UID": str(account.pw_uid),
           "SANDBOX_GID": str(account.pw_gid), "SANDBOX_TMPFS_MB": "1", "SANDBOX_ERL_OPTIONS": ""}
    try:
        result = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the namespace probe failed ({error})"
    if result.returncode != 0:
        return f"the namespace probe failed: {(result.stdout + result.stderr).strip()[-300:] or result.returncode}"
    return None

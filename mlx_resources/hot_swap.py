"""Hot swap: reload the code location with a new composition, refusing a bad one.

Dagster reloads a code location on ``reloadRepositoryLocation`` (the UI's Reload button, the
GraphQL API): a ``dagster code-server`` starts a fresh server process that imports the
definitions again (reading the composition file again) and, once it serves, shuts the old one
down after the runs it started have finished. The webserver and the daemon go on serving
throughout. Two things Dagster cannot know about MLX:

* a composition that does not load would turn the location into a load error until the next
  good reload;
* every run imports the definitions again in its own process, so a bad composition file left
  in place fails the next runs even while the webserver still shows the old location.

:func:`reload_code_location` therefore swaps a *candidate* file in: it loads the definitions
with the candidate in a fresh process (as the code server would import them, with this
process's environment); only when that succeeds does it install the candidate as the served
composition (``MLX_COMPOSITION``, else ``./mlx.yaml``: temp file + atomic rename) and ask the
webserver to reload through Dagster's GraphQL client. A bad candidate is refused with its
one-line error (file, key, fix) and neither the served file nor the running location changes.

Command line (where the code server runs: same image, same environment)::

    python -m mlx_resources.hot_swap --url http://127.0.0.1:3000 --composition mlx.next.yaml

Without ``--composition`` the served file itself is checked (edited in place) before the
reload. Exit status 0: reloaded; 1: refused or the reload failed, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODULE = "mlx_assets.definitions"
CHECK_TIMEOUT_S = 600.0
LAST_GOOD_ENV = "MLX_LAST_GOOD_COMPOSITION"
"""The variable naming the file where the code location keeps its last composition that loaded
(``mlx_assets.composition_guard``). A check never sees it: with it, a candidate that does not
load would be checked as the saved composition instead, and pass."""

# Imports the module and builds its repository (Dagster resolves the asset graph, jobs, sensors
# and schedules then), in a fresh interpreter. Prints one line on failure: the exception's
# message, which for a composition mistake names the file, the key and the fix.
_CHECK = """
import importlib, sys
try:
    module = importlib.import_module(sys.argv[1])
    defs = getattr(module, sys.argv[2])
    defs.get_repository_def()
except BaseException as exc:
    message = str(exc).strip() or type(exc).__name__
    print("MLX_CHECK_FAILED " + type(exc).__name__ + ": " + message, flush=True)
    sys.exit(1)
print("MLX_CHECK_OK", flush=True)
"""


class HotSwapError(RuntimeError):
    """The code location was not reloaded; the message says why and what still serves."""


@dataclass(frozen=True)
class ReloadResult:
    """A successful reload: the location, the webserver, and the composition file it serves."""

    location: str
    url: str
    served: str | None = None


def check_code_location(
    module: str = DEFAULT_MODULE,
    attribute: str = "defs",
    *,
    env: Mapping[str, str] | None = None,
    working_directory: str | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> str | None:
    """Load ``module.attribute`` (a ``dagster.Definitions``) in a fresh Python process.

    Args:
        module: the code location's module, as the workspace names it.
        attribute: the ``Definitions`` attribute of the module.
        env: the environment to load with (default: this process's).
        working_directory: the directory to load from (default: the current one).
        timeout_s: seconds the load may take before it counts as failed.

    Returns:
        ``None`` when the definitions load, else the error as one message (no traceback).
    """
    check_env = {k: v for k, v in (os.environ if env is None else env).items()}
    check_env.pop(LAST_GOOD_ENV, None)  # the candidate itself must load, not the saved one
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK, module, attribute],
            env=check_env,
            cwd=working_directory,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return f"loading {module} took longer than {timeout_s:.0f}s"
    if done.returncode == 0 and "MLX_CHECK_OK" in done.stdout:
        return None
    for line in done.stdout.splitlines():
        if line.startswith("MLX_CHECK_FAILED "):
            first = line.removeprefix("MLX_CHECK_FAILED ")
            rest = done.stdout.split(line, 1)[1].strip()
            return f"{first}\n{rest}".strip()
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return f"loading {module} failed (exit {done.returncode}): " + " | ".join(tail)


def _client(url: str, timeout_s: int):  # type: ignore[no-untyped-def]
    from dagster_graphql import DagsterGraphQLClient

    parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise HotSwapError(f"--url {url!r} names no host; write e.g. http://127.0.0.1:3000")
    return DagsterGraphQLClient(
        parsed.hostname,
        port_number=parsed.port,
        use_https=parsed.scheme == "https",
        timeout=timeout_s,
        path_prefix=parsed.path.rstrip("/"),
    )


def served_composition(env: Mapping[str, str], working_directory: str | None = None) -> Path:
    """The composition file the code location reads: ``MLX_COMPOSITION``, else ``./mlx.yaml``
    of ``working_directory`` (default: the current directory)."""
    base = Path(working_directory or os.getcwd())
    named = env.get("MLX_COMPOSITION")
    path = Path(named) if named else Path("mlx.yaml")
    return path if path.is_absolute() else base / path


def reload_code_location(
    url: str,
    location: str = "mlx",
    *,
    composition: str | os.PathLike[str] | None = None,
    module: str | None = DEFAULT_MODULE,
    attribute: str = "defs",
    env: Mapping[str, str] | None = None,
    working_directory: str | None = None,
    timeout_s: int = 300,
) -> ReloadResult:
    """Reload ``location`` on the webserver at ``url``, with ``composition`` swapped in first.

    Args:
        url: the webserver's base URL, e.g. ``http://127.0.0.1:3000`` (a path prefix is kept).
        location: the code location's name in the workspace.
        composition: a candidate composition file. It is checked and, when the definitions load
            with it, copied over the served file (:func:`served_composition`) before the reload.
            ``None``: check the served file as it is.
        module: the module to load for the check (``None`` skips the check and the swap is a
            plain copy + Dagster reload).
        attribute: the module's ``Definitions`` attribute.
        env: the environment the code server runs with (default: this process's).
        working_directory: where the code server runs (default: the current directory).
        timeout_s: seconds for the check and for the reload request each.

    Returns:
        :class:`ReloadResult` once the webserver reports the location loaded.

    Raises:
        HotSwapError: the candidate (or the served file) does not load: nothing was changed and
            the running location keeps serving; or the webserver refused or failed the reload.
    """
    env = dict(os.environ if env is None else env)
    served = served_composition(env, working_directory)
    candidate = Path(composition) if composition is not None else served
    if not candidate.is_file():
        raise HotSwapError(f"composition file {candidate} does not exist; nothing was reloaded")
    _ensure_reachable(url, location, timeout_s)  # fail fast, before anything changes
    if module is not None:
        problem = check_code_location(
            module,
            attribute,
            env={**env, "MLX_COMPOSITION": str(candidate.resolve())},
            working_directory=working_directory,
            timeout_s=timeout_s,
        )
        if problem is not None:
            problem = "\n  ".join(problem.splitlines())
            raise HotSwapError(
                f"code location {location!r} not reloaded: its definitions do not load with "
                f"{candidate}:\n  {problem}\n"
                f"  {served} is unchanged and the running code location keeps serving; "
                "fix the composition and swap again"
            )
    from mlx_plugins.kernel.atomic import atomic_write_bytes

    swap = candidate.resolve() != served.resolve()
    previous = served.read_bytes() if swap and served.exists() else None
    if swap:
        try:
            atomic_write_bytes(served, candidate.read_bytes())  # temp file + rename: never half
        except OSError as exc:
            raise HotSwapError(
                f"{candidate} loads, but it cannot be installed over {served} "
                f"({type(exc).__name__}: {exc.strerror or exc}); nothing was reloaded. A "
                "read-only served file (a Kubernetes ConfigMap mount) is changed by applying the "
                "ConfigMap instead: check the candidate with --check-only, apply it, then run "
                "this command without --composition (docs/deployment.md)"
            ) from None
    try:
        _reload(url, location, timeout_s)
    except HotSwapError as exc:
        if previous is not None:  # the location serves the old file's definitions: keep them
            atomic_write_bytes(served, previous)
            raise HotSwapError(f"{exc}\n  {served} is restored to what it was") from None
        raise
    return ReloadResult(location=location, url=url, served=str(served))


def _ensure_reachable(url: str, location: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    base = url if "://" in url else f"http://{url}"
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/server_info", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HotSwapError(
            f"cannot reach the Dagster webserver at {url} ({reason}); code location "
            f"{location!r} not reloaded and nothing changed: check --url"
        ) from None


def _reload(url: str, location: str, timeout_s: int) -> None:
    from dagster_graphql import DagsterGraphQLClientError, ReloadRepositoryLocationStatus

    try:
        with warnings.catch_warnings():  # gql's deprecation of how dagster_graphql calls it
            warnings.simplefilter("ignore", DeprecationWarning)
            info = _client(url, timeout_s).reload_repository_location(location)
    except DagsterGraphQLClientError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HotSwapError(
            f"reload of code location {location!r} at {url} failed: {first}"
        ) from None
    except Exception as exc:  # requests' connection errors and timeouts
        raise HotSwapError(
            f"cannot reach the Dagster webserver at {url} to reload {location!r}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if info.status != ReloadRepositoryLocationStatus.SUCCESS:
        raise HotSwapError(
            f"reload of code location {location!r} at {url} failed "
            f"({info.failure_type}): {info.message}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_resources.hot_swap",
        description="Reload a code location after checking that its definitions load.",
    )
    parser.add_argument("--url", help="webserver URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("--location", default="mlx", help="code location name (default mlx)")
    parser.add_argument(
        "--composition",
        default=None,
        help="candidate composition file, installed over the served one once it loads "
        "('-': read it from standard input)",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="only check that the definitions load with the candidate (or the served file); "
        "change nothing, reload nothing (no --url needed)",
    )
    parser.add_argument("--module", default=DEFAULT_MODULE, help="module with the Definitions")
    parser.add_argument("--attribute", default="defs", help="Definitions attribute (defs)")
    parser.add_argument(
        "--no-check", action="store_true", help="reload without loading the definitions first"
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds (default 300)")
    args = parser.parse_args(argv)
    if not args.check_only and not args.url:
        parser.error("--url is required (unless --check-only)")
    with contextlib.ExitStack() as stack:
        composition = args.composition
        if composition == "-":  # e.g. kubectl exec -i ... --composition - < mlx.next.yaml
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mlx-candidate-"))
            composition = os.path.join(folder, "mlx.yaml")
            Path(composition).write_text(sys.stdin.read())
        try:
            if args.check_only:
                return _check_only(composition, args.module, args.attribute, args.timeout)
            done = reload_code_location(
                args.url,
                args.location,
                composition=composition,
                module=None if args.no_check else args.module,
                attribute=args.attribute,
                timeout_s=args.timeout,
            )
        except HotSwapError as exc:
            print(f"hot swap: {exc}", file=sys.stderr)
            return 1
    origin = (
        "MLX_COMPOSITION"
        if os.environ.get("MLX_COMPOSITION")
        else "./mlx.yaml: MLX_COMPOSITION is not set here"
    )
    print(
        f"hot swap: code location {done.location!r} reloaded at {done.url}; served file "
        f"{done.served} ({origin}; it must be the file the code server reads)"
    )
    return 0


def _check_only(composition: str | None, module: str, attribute: str, timeout_s: int) -> int:
    """``--check-only``: load the definitions with ``composition`` (or the served file)."""
    target = Path(composition) if composition else served_composition(os.environ)
    if not target.is_file():
        print(f"hot swap: composition file {target} does not exist", file=sys.stderr)
        return 1
    problem = check_code_location(
        module,
        attribute,
        env={**os.environ, "MLX_COMPOSITION": str(target.resolve())},
        timeout_s=timeout_s,
    )
    if problem is not None:
        problem = "\n  ".join(problem.splitlines())
        print(f"hot swap: the definitions do not load with {target}:\n  {problem}", file=sys.stderr)
        return 1
    print(f"hot swap: the definitions load with {target}; nothing was changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

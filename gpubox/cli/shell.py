"""`gpubox ssh`, `open` and `ssh-config`: a shell or one command on the host, a tunnelled service in the
browser, and entries for other SSH tools."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import webbrowser

from gpubox import paths
from gpubox.actions.hosts import service_url
from gpubox.actions.runs import run_subfolder
from gpubox.cli.output import ask_to_pin, load_hosts, load_project, out, tell_moved_here
from gpubox.errors import GpuboxError, UsageError
from gpubox.remote.session import connect_host, shell_word
from gpubox.remote.ssh_config import write_ssh_config
from gpubox.state import open_state

__all__ = ["cmd_open", "cmd_ssh", "cmd_ssh_config"]


def cmd_ssh(args: argparse.Namespace) -> int:

    project = load_project()
    host = load_hosts(project).get(args.host)
    command = list(args.command_args)
    session = connect_host(
        host, project, accept_new=args.accept_new, ask=ask_to_pin(), probe=False, folder="claim"
    )
    tell_moved_here(session)
    session.agent.close()  # the folder is settled; the shell needs only the connection
    connection = session.connection
    # The matching subfolder of the project on the host (or [run] cwd), when it is there; else the project root.
    root = shell_word(session.remote_dir)
    sub = run_subfolder(project)
    cd = f"cd {root} 2>/dev/null; " if not sub else f"cd {root}/{shlex.quote(sub)} 2>/dev/null || cd {root}; "
    shell_recorded = False
    try:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        if interactive:
            # While it is open, an interactive session keeps the host from idling out (see autostop_minutes).

            with open_state() as state:
                state.add_shell(host.name, os.getpid())
            shell_recorded = True
        if not command:
            if not interactive:
                raise UsageError("an interactive shell needs a terminal: give a command after `--`")
            result = connection.fabric.run(
                cd + 'exec "${SHELL:-/bin/sh}" -l', pty=True, warn=True, in_stream=sys.stdin, hide=False
            )
            return int(result.exited)
        # One argument is a shell line (like ssh); several are an exact argv.
        remote = command[0] if len(command) == 1 else shlex.join(command)
        if interactive:
            result = connection.fabric.run(cd + remote, pty=True, warn=True, in_stream=sys.stdin, hide=False)
            return int(result.exited)
        stdin = None if sys.stdin is None or sys.stdin.closed else sys.stdin.buffer
        return connection.stream(cd + remote, stdin, sys.stdout.buffer, sys.stderr.buffer)
    finally:
        connection.close()
        if shell_recorded:
            with open_state() as state:
                state.remove_shell(os.getpid())


def cmd_open(args: argparse.Namespace) -> int:

    project = load_project()
    host = load_hosts(project).pick(args.host)
    with open_state() as state:
        tunnels = state.live_tunnels(host.name)
        holders = {s.project: s for s in state.host_supervisors(host.name)}
    rows = {row.service: row for row in tunnels if row.project == project.id}
    services = sorted(name for name, service in project.services.items() if service.enabled)
    if args.service not in rows and args.service not in services:
        import difflib

        close = difflib.get_close_matches(args.service, services, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"there is no service {args.service!r}{hint} (this project's: {', '.join(services) or 'none'}; "
            "[services.NAME] in gpubox.toml adds one)"
        )
    if args.service not in rows:
        theirs = [row for row in tunnels if row.service == args.service and row.project != project.id]
        if theirs:
            holder = holders.get(theirs[0].project)
            whose = (
                f"project {holder.project_name} ({holder.root})"
                if holder and holder.root
                else "another project"
            )
            raise GpuboxError(
                f"{args.service} on {host.name} is tunnelled for {whose}, not for this project ({project.root}): "
                f"`gpubox up {host.name}` here starts this project's own"
            )
        known = ", ".join(sorted(rows)) or "none"
        raise GpuboxError(
            f"{args.service} is not tunnelled from {host.name} for this project (tunnelled now: {known}); "
            f"`gpubox up {host.name}` starts the services and their tunnels"
        )
    url = service_url(host, project, rows[args.service], show_secret=True)
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        browser = None
    if (
        browser is None
        or args.print_only
        or (not os.environ.get("DISPLAY") and sys.platform.startswith("linux"))
    ):
        out(url)
        return 0
    browser.open(url)
    out(f"opened {url.split('?')[0]}")
    return 0


def cmd_ssh_config(args: argparse.Namespace) -> int:

    path, names = write_ssh_config(load_hosts())
    out(f"wrote {path} ({', '.join('gpubox-' + n for n in names)})")
    out("add this line near the top of ~/.ssh/config (before any `Host *` block) to use them from")
    out("VS Code Remote-SSH, JetBrains Gateway or plain ssh:")
    out(f"    Include {paths.ssh_config_file()}")
    return 0

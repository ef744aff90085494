"""Child processes that die with the process that started them, and free local ports.

Shared by the emulator (function instances) and :mod:`lambdapool.testing` (throwaway servers).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_setup(user: pwd.struct_passwd | None, die_with_parent: bool = True) -> None:
    """In the child before exec: drop to ``user``, then ask to die with our process.

    The uid switch happens first because the kernel clears the parent-death signal on a
    credential change (so Popen's own ``user=``, applied after preexec_fn, would undo it).
    """
    if user is not None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    for sig in (signal.SIGINT, signal.SIGQUIT):  # a shell's `cmd &` leaves these ignored
        try:
            signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # forked from a non-main thread
            pass
    PR_SET_PDEATHSIG = 1
    try:
        if die_with_parent:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)
    except (OSError, AttributeError):  # not Linux: sweep_orphans still cleans up
        pass
    os.setpgrp()  # a Ctrl-C in the terminal is for pytest, not for the server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

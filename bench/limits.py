"""Process limits the many-streams scenario needs."""

from __future__ import annotations

import resource


def raise_open_files() -> int:
    """Raise the soft limit on open files to the hard one; return the soft limit now in force.

    Thousands of concurrent streams mean hundreds of connections on each side, and with upstream
    HTTP connections a thousand or more: a soft limit of 1024 would fail calls for want of file
    descriptors rather than for anything the gateway does. Children inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    # An unlimited hard limit is still bounded by the kernel's nr_open: ask for a generous figure.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target

"""The remote agent, in one folder: the program sent to the host, the client that talks to it, and the calls.

- ``host.py``: the stdlib-only program uploaded to ``~/.gpubox/agent-<hash>.py`` and run on the host's python3;
  its one op table lists every request it answers.
- ``client.py``: uploads it by content hash, starts it on an exec channel, frames requests and maps its errors
  into :mod:`gpubox.errors`.
- ``calls.py``: one typed function per op, the only place the client side names an op.
- ``PROTOCOL.md``: framing, ops, errors, the on-host layout of ``~/.gpubox``, and when to bump the protocol.

Nothing is imported here, so ``gpubox.remote.agent.host`` (imported by the client for its constants) loads
without paramiko.
"""

"""``python -m gpubox.train.multihost watch m-N``: the detached watcher of a multi-host run."""

from gpubox.train.multihost.watcher import main

raise SystemExit(main())

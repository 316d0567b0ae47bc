from gpubox.cli import main

raise SystemExit(main())

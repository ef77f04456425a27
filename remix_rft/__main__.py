from remix_rft.cli import main

raise SystemExit(main())

from fastrelay.cli import main

raise SystemExit(main())

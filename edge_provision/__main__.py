from edge_provision.cli import main

raise SystemExit(main())

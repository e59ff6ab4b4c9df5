from worker import cli

raise SystemExit(cli.main())

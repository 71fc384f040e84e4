"""`python -m fleetcli`: the `fleet` command with this interpreter."""

from fleetcli.main import main

raise SystemExit(main())

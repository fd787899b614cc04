from multinic_sim.cli import main

raise SystemExit(main())

"""`python -m discovery.ctl` is `discoveryctl`."""

from discovery.ctl.cli import main

main()

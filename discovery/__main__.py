"""`python -m discovery` starts the server."""

from discovery.main import main

main()

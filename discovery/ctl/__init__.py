"""`discoveryctl`: the operator's command line, over gRPC.

    discoveryctl services
    discoveryctl --server discovery:50051 get game --healthy --json
    discoveryctl watch game chat
    discoveryctl register game game-1 10.0.0.5 8080 --meta version=1.2
    discoveryctl heartbeat game game-1 --load 0.42
    discoveryctl unregister game game-1
    discoveryctl alerts
    discoveryctl health

It talks to the server only through the client SDK's channel and the generated code, like any
other client. Exit status: 0 done, 1 refused by the server, 2 usage error, 3 server unreachable
(or the TLS handshake failed); `watch` runs until interrupted and then exits 0.
"""

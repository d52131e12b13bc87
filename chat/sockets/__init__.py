"""The socket edge: websocket endpoints, their wire formats, and what sits under them.

The top layer of `chat/`: a socket (`socket`) parses frames in its wire
format (`json`, `classic`) and calls the actions (`chat.actions`); it reaches
the delivery core only through the hub's public interface (`chat.delivery`).
Around it: routing, the session middleware (`auth`), allowed origins, the
transport under daphne, open sockets per user and address (`socket_caps`)
and every reach into other libraries' private parts (`upstream`).
"""

"""``cosmos-mongo serve``: a MongoDB wire-protocol endpoint over the embedded database, so
mongosh, Compass and any driver can read (and, with ``--writable``, write) the store.

* :mod:`~cosmos_mongo.wire.protocol` frames and parses messages (OP_MSG, and the legacy
  OP_QUERY handshake drivers send first) with the ``bson`` package that pymongo ships;
* :mod:`~cosmos_mongo.wire.cursors` keeps the open cursors, bounded in number and idle time;
* :mod:`~cosmos_mongo.wire.commands` answers each command from the embedded engine, with the
  library's read semantics;
* :mod:`~cosmos_mongo.wire.server` accepts connections on a loopback address or a Unix
  socket, and keeps serving the others whatever one client sends.
"""

from cosmos_mongo.wire.server import DEFAULT_PORT, ServeOptions, WireServer

__all__ = ["DEFAULT_PORT", "ServeOptions", "WireServer"]

"""The wire protocols of the fastframe services, one module each, imported by both ends.

Each module's docstring is its protocol's specification (message layouts, tags, error codes, limits), and
its functions make and check the messages without touching a socket, so that the services in
``fastframe.servers`` and the clients in :mod:`fastframe.client` speak from one text:

- :mod:`fastframe.wire.errors` -- the ``!code message`` error frame every service may answer with;
- :mod:`fastframe.wire.command` -- the command service: the command line, the ``O``/``E``/``X`` replies;
- :mod:`fastframe.wire.files` -- the file service: the JSON request, the ``S`` metadata frame, the trailer;
- :mod:`fastframe.wire.auth` -- the shared-secret handshake in front of both;
- :mod:`fastframe.wire.timeformat` -- the 4-byte replies of the time service.

Nothing is imported here: a client command loads only the protocols it speaks (its start-up is most of a
small request).
"""

"""Pure: how a value is encoded, compared and printed (no I/O; imports only errors and types).

``canonical.py`` chooses a column's equality encoder (``encoder_for``, ``encode_row``) from
the encoders of ``generic.py`` (by Python type, ``generic_encode``), ``containers.py``
(arrays, composites, ranges) and ``jsonb.py``, over the tags of ``tags.py``;
``pgtext.py`` is PostgreSQL's text output and the JSON form of reports; ``lsn.py`` parses
and formats WAL positions; ``wording.py`` holds shared wording."""

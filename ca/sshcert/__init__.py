"""OpenSSH formats: the wire encoding, certificates (to-be-signed bytes, parse, verify), user keys, KRLs.

Pure functions over bytes; nothing here touches a file, a database or a key backend.
May import: ca core (errors, models, durations, files, rules) only.
"""

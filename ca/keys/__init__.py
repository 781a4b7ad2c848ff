"""CA signing keys: the keyring (which key signs, which are trusted), rotation, and the key backends behind one seam.

A backend gives a public key, a signature algorithm and ``sign(data)``; the private key never leaves it
(``file.py``: an OpenSSH key file; ``pkcs11.py``: a key in a PKCS#11 token, through python-pkcs11).
``rotation.py`` audits each rotation step through the store.
May import: ca core, ca.sshcert and ca.store (its own layer).
"""

"""CA signing keys: the keyring (which key signs, which are trusted) and the key backends behind one seam.

A backend gives a public key, a signature algorithm and ``sign(data)``; the private key never leaves it.
May import: ca core and ca.sshcert.
"""

"""The main screen (:mod:`.screen`) and its panels (:mod:`.panels`), one file each."""

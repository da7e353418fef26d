"""The checkout and the run folders made from it: copying a script folder, cloning a model's
``url``, madengine's log names in the workspace."""

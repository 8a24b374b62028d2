"""Stage 1: download Libri-Light, extract it safely, probe the books, cut by voice activity, write
the segment manifest."""

"""Files that come from or go to other tools: the checkpoint layouts people already have (:mod:`.formats`,
read by :mod:`.convert`), ``didi export`` (:mod:`.export`) and sample files (:mod:`.sample_files`)."""

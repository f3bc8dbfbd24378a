"""The survey chapter ("Automated alignment: a map"): the addition task with its gold checker
(:mod:`~paperlab.survey.task`), the chapter's tiny models (:mod:`~paperlab.survey.models`), one
experiment per source of alignment signal (:mod:`~paperlab.survey.experiments`) and the survey's
taxonomy as data (:mod:`~paperlab.survey.taxonomy`)."""

"""Buffer of Thoughts (Yang et al., 2024), from scratch, with tiny models in GPT-4's roles.

- :mod:`paperlab.bot.tasks`: four task families (Game of 24, multi-step arithmetic, word sorting,
  checkmate in one) with generators, exact checkers, phrasings and worked steps;
- :mod:`paperlab.bot.sandbox`: programs run in a separate, limited process;
- :mod:`paperlab.bot.buffer`: thought templates, the meta-buffer (retrieval with a threshold) and the
  buffer manager;
- :mod:`paperlab.bot.prompts`: how each model role is asked and read, for the tiny models and for a real one;
- :mod:`paperlab.bot.methods`: IO, chain of thought, Tree of Thoughts, Buffer of Thoughts, the stream;
- :mod:`paperlab.bot.model`: the data and the tiny multi-role models;
- :mod:`paperlab.bot.experiments`: the chapter's experiment (``python -m paperlab run bot``).

The chapter is ``book/08-bot.md``. (No imports here, so that a module's cache key covers only what it uses.)
"""

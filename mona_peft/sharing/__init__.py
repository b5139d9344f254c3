"""Sharing what a run trained: model cards (:mod:`.model_card`), the Hub push (:mod:`.hub`) and the class names saved
beside an adapter (:mod:`.labels`)."""

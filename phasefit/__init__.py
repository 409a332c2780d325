"""phasefit: phases of fact learning, measured."""

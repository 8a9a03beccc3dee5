"""The HL7 v2 listener: reading messages, acknowledging them, and the real MLLP process."""

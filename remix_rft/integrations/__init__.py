"""ReMix inside other frameworks: ``remix_rft.integrations.trl.ReMixGRPOTrainer`` (TRL)."""

"""Further pretraining on unlabelled text: corpus reading, NSP pairs and packing, masked-LM masking.

The task that trains on these (tasks/pretrain.py), its heads (heads.BertForPreTraining) and the
commands (cli/pretrain.py, cli/fill_mask.py, cli/nsp.py) build on these modules; nothing here
imports torch.
"""

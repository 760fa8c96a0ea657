"""Tiny builder-tower config nodes shared by the tower tests (models/ and pipelines/)."""

TIMM_VIT = {"name": "timm", "model": "vit_tiny_patch16_224", "img_size": 32,
            "model_kwargs": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}}
TIMM_RESNET = {"name": "timm", "model": "resnet18"}
TORCHVISION = {"name": "torchvision", "model": "resnet18"}
OPEN_CLIP_VIT = {"name": "open_clip", "model": "ViT-B-32", "img_size": 32, "output_dim": 24,
                 "model_kwargs": {"patch_size": 8, "width": 32, "layers": 1, "head_width": 16}}
OPEN_CLIP_RN = {"name": "open_clip", "model": "RN50", "img_size": 64, "output_dim": 40,
                "model_kwargs": {"layers": [1, 1, 1, 1], "width": 16}}
OPEN_CLIP_TEXT = {"name": "open_clip", "model": "ViT-B-32", "context_length": 16,
                  "model_kwargs": {"width": 32, "heads": 2, "layers": 1}}
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 49408, "max_position_embeddings": 16}
HF_TEXT = {"name": "huggingface", "config": BERT, "context_length": 16}

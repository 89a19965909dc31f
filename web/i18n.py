"""Labels in English and Chinese; Gradio picks the language from the browser."""
from __future__ import annotations

import gradio as gr

TRANSLATIONS = {
    "en": {
        "title": "Image chat on Sophgo TPUs and CPUs",
        "image_tab": "Image chat",
        "text_tab": "Text chat",
        "question": "Question",
        "question_placeholder": "Ask about the picture, then press Enter",
        "text_placeholder": "Type a message, then press Enter",
        "send": "Send",
        "stop": "Stop",
        "clear": "Clear",
        "describe": "Describe pictures on upload",
        "examples": "Example pictures",
        "settings": "Generation settings",
        "max_new_tokens": "Max new tokens",
        "temperature": "Temperature (0 = always the most likely word)",
        "top_p": "Top-p",
        "top_k": "Top-k (0 = no limit)",
        "repetition_penalty": "Repetition penalty",
        "chat": "Conversation",
    },
    "zh-CN": {
        "title": "算能 TPU 与 CPU 上的图文对话",
        "image_tab": "图片对话",
        "text_tab": "文字对话",
        "question": "问题",
        "question_placeholder": "就图片提问，按回车发送",
        "text_placeholder": "输入消息，按回车发送",
        "send": "发送",
        "stop": "停止",
        "clear": "清空",
        "describe": "上传后自动描述图片",
        "examples": "示例图片",
        "settings": "生成参数",
        "max_new_tokens": "最多生成的词元数",
        "temperature": "温度（0 = 总是选最可能的词）",
        "top_p": "Top-p",
        "top_k": "Top-k（0 = 不限）",
        "repetition_penalty": "重复惩罚",
        "chat": "对话",
    },
}

I18N = gr.I18n(**TRANSLATIONS)

"""Google Gemini ``generateContent`` wire format, on the provider side only."""

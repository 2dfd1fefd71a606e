"""Commands around studies that need no study: downloading datasets, exporting one into the folder
layout, translating images with a trained generator.
"""

"""federation/ — floor 3: the wire. Building, checking and aggregating adapter updates; the device round; Flower apps.

May import personal/ and privacy/.
"""

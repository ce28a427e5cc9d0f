import MySQLWire

"""Operations: doctor, retention."""
